"""MAPLE command line and the offline end-to-end demo."""
