"""Importers: public speculative-decoding traces and request-arrival traces."""
