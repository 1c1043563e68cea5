"""Pipeline-parallel inference and evaluation on ``torch.distributed.pipelining``: a float or quantised
artifact's model split into stages by stored bytes, one stage per process (torchrun, one machine or many),
each process reading only its own tensors from the artifact.

``evaluate_pipelined(artifact, batches, Pipeline(stages=2))`` under ``torchrun --nproc-per-node 2``; on the
command line ``bitladder run ARTIFACT --pipeline 2``. New architectures register a
:class:`~bitladder.pipeline.parallel.blocks.Splitter`.
"""

from bitladder.pipeline.parallel.evaluate import Pipeline, StageResult, evaluate_pipelined
from bitladder.pipeline.parallel.load import StagePlan, load_stage, plan

__all__ = ["Pipeline", "StagePlan", "StageResult", "evaluate_pipelined", "load_stage", "plan"]
