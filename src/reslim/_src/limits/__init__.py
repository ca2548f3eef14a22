"""Limits of the training dynamics behind one interface (see ``reslim.limits``)."""
