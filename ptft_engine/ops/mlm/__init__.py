"""Masked-LM sampling (BERT 80/10/10) with Philox-deterministic masks; see reference.py."""
