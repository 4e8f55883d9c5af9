"""The GPU box's side: real speculative decoding (traces, profiles) and the live server."""
