"""GPU trace collection: real speculative decoding with draft/target pairs."""
