"""Fused attention: reference.py (spec), triton.py, native.py (C++/CUDA), op.py (public)."""
