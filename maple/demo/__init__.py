"""The offline end-to-end demo (`maple demo`).

- `world`: a procedurally drawn image-caption world with a scene graph per image, and its
  held-out retrieval set and fine-grained quadruples.
- `scene_judge`: a judge and a captioner that read the scene graphs; stand-ins for the MLLMs
  of the paper, plugged into the same protocols as `MLLMJudge` and `ContrastiveCaptioner`.
- `pipeline`: world -> preference data -> base model -> fine-tuning runs -> evaluation -> report.
- `report`: results.md and the plots.
- `cli`: the `maple demo` command.

The choices of `maple demo` are defined here, so that its `--help` and usage errors come before torch loads.
"""

BACKBONES = ("dual_encoder", "mllm")
MINERS = ("scene-graph", "base-model")
