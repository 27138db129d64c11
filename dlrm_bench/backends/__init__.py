"""Inference backends. ``native``: stock PyTorch (oneDNN / MKL), every precision, no compile."""
