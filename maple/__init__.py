"""MAPLE command line and the offline end-to-end demo.

`PAPER_CITATION` is the BibTeX of the paper this package implements, quoted by the trainer, the metrics and the cards.
"""

PAPER_CITATION = """@inproceedings{maple2025,
  title = {Guiding Cross-Modal Representations with MLLM Priors via Preference Alignment},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year = {2025},
  eprint = {2506.06970},
  archivePrefix = {arXiv}
}"""
