"""The quantisation configs of the MiniLM bench's rungs (:mod:`bitladder.pipeline.bench.minilm`), by name, so the
tinylm bench and the export tests take the same ones."""

from __future__ import annotations

from bitladder import GPTQ, Act, Int

#: W8A8 with one activation scale per token, outliers moved into the weights first where SmoothQuant puts them
#: (the inputs read from a LayerNorm: q/k/v, sharing one scale, and the first FFN layer). Alpha 0.65 from a
#: sweep on MiniLM's mean cosine (docs/DESIGN.md, 'SmoothQuant goes where the paper puts it').
W8A8_SQ = Int(8, act=Act(dynamic="token", smoothquant=0.65))
#: per-token W8A8 on block-Hadamard-rotated inputs, no SmoothQuant. In ONNX the rotation is a MatMul (a multiply-add
#: per block channel), so 32-channel blocks trade fidelity for speed (docs/results/bench-minilm-rotation32-avx2.json)
W8A8_ROT = Int(8, act=Act(dynamic="token"), rotate=32)
#: in torch the rotation is a C transform (log2 of the block in additions), so 64-channel blocks cost no more than
#: 32 and keep more fidelity: 0.9992 at 1.45x against 0.9991 at 1.38x (docs/results/static-minilm-kjv-avx2.json)
W8A8_ROT64 = Int(8, act=Act(dynamic="token"), rotate=64)
#: static (calibrated) per-tensor activations: int8 weights take the integer GEMM where the CPU has VNNI (elsewhere
#: auto keeps the exact fake-quantised path); 7-bit weights take it on every CPU with the layers' own codes
W8A8_STATIC = Int(8, act=Act(smoothquant=0.65))
W7A8_STATIC = Int(7, act=Act(smoothquant=0.65))
#: static grids where the input comes from a LayerNorm (q/k/v, FFN up), per token elsewhere (attention out, FFN down)
W7A8_MIXED = Int(7, act=Act(smoothquant=0.65, static_layers="norm"))
#: static per-tensor W8A8 whose grids leave each layer's 16 widest input channels to a float product beside the
#: GEMM; SmoothQuant 0.5 under it (docs/DESIGN.md, 'Outlier channels beside a static GEMM')
W8A8_OUTLIERS = Int(8, act=Act(smoothquant=0.5, outliers=16))
#: the same on the FFN's second layers only (GELU outputs: most of static W8A8's error on MiniLM), SmoothQuant
#: 0.8 alone elsewhere: fewer float products for the runtime to add
W8A8_SQ80 = Int(8, act=Act(smoothquant=0.8))
#: the same two with 7-bit weights: their files keep signed weight codes (u8 x s8 pairs cannot saturate), which
#: OpenVINO runs as int8 GEMMs; 8-bit codes are written u8 with zero point 128 and run in f32 there
W7A8_SQ80, W7A8_OUTLIERS = Int(7, act=Act(smoothquant=0.8)), Int(7, act=Act(smoothquant=0.5, outliers=16))
#: the 7-bit pair by GPTQ (its Hessians on the smoothed inputs), SmoothQuant searched per layer, and 32 outlier
#: channels on the FFN's second layers: mean cosine 0.99902 against RTN's 0.99797, still 7-bit codes every CPU's
#: u8 x s8 GEMM runs exactly (docs/results/notes.md, 'GPTQ under SmoothQuant')
W7A8_GPTQ, W7A8_GPTQ_DOWN = (Int(7, method=GPTQ(), act=Act(smoothquant="auto")),
                             Int(7, method=GPTQ(), act=Act(smoothquant=0.5, outliers=32)))
