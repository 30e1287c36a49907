"""The offline end-to-end demo (`maple demo`).

- `world`: a procedurally drawn image-caption world with a scene graph per image, and its
  held-out retrieval set and fine-grained quadruples.
- `scene_judge`: a judge and a captioner that read the scene graphs; stand-ins for the MLLMs
  of the paper, plugged into the same protocols as `MLLMJudge` and `ContrastiveCaptioner`.
- `pipeline`: world -> test sets -> base model -> preference data -> fine-tuning runs, evaluated -> report.
- `report`: the summary over seeds (results.json), results.md, the plots and the printed table.
- `cli`: the `maple demo` command.

The choices of `maple demo` are defined here, so that its `--help` and usage errors come before torch loads.
"""

BACKBONES = ("dual_encoder", "mllm")
MINERS = ("scene-graph", "base-model")
