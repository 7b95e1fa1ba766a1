"""What bench.py times: each onnxattr configuration (method, parameters, the reference configurations its
speed-up is measured against), the groups run together, and the sizes they use."""

from __future__ import annotations

STEPS = 64
OCCLUSION_WINDOW, OCCLUSION_STRIDE = (3, 32, 32), (3, 32, 32)  # 7 x 7 = 49 windows on 224 x 224
PAUSE = 0.2  # seconds between timed calls
NT_SAMPLES = 16  # VarGrad's noisy copies in the noise-tunnel group
SV_ORDERS = 2  # Shapley value sampling's random orders of the 16 blocks: 32 forward passes
DLS_BASELINES = 4  # DeepLIFT SHAP's baselines
PERMUTATIONS_PER_EVAL = 4  # feature permutation: groups per forward pass (a batch of 4 x N rows)
KS_SAMPLES = 32  # KernelSHAP's and LIME's coalitions of the 16 blocks (32 forward passes), 8 per forward pass
CONDUCTANCE_STEPS = 32  # conductance's intervals (33 gradient passes), at the input and at one block's output
CONDUCTANCE_BLOCK = 12  # ResNet50's last block of its third stage (output 1024 x 14 x 14)
CONDUCTANCE_TENSOR = f"/layers/layers.{CONDUCTANCE_BLOCK}/relu/Relu_output_0"  # that block's output in the export
RECURRENT_SHAPE = (100, 64)  # the lstm and gru models' input per sample: 100 steps of 64 features
CRP_CONCEPTS = 8  # conditioned maps of one image: its first 8 channels at that block's output, one per row
QUANTIZED = {"qdq": "QDQ", "qop": "QOperator"}  # model-name suffix -> onnxruntime's QuantFormat (resnet50-qdq, ...)
CALIBRATION_IMAGES = 8  # quantize_static's calibration: random images of the input's shape, seed 0


def input_shape(model: str) -> tuple:
    """One sample's input shape: images for the CNNs and the ViT, a sequence for the recurrent net."""
    return RECURRENT_SHAPE if model in ("lstm", "gru") else (3, 224, 224)


def blocks(per_side: int):
    """Group ids [1, 224, 224] of per_side x per_side square blocks, shared by the channels."""
    import numpy as np

    rows, cols = np.indices((224, 224)) // (224 // per_side)
    return (rows * per_side + cols)[None].astype(np.int64)


def dls_baselines():
    import numpy as np

    return np.random.default_rng(1).standard_normal((DLS_BASELINES, 3, 224, 224)).astype(np.float32) * 0.1

# configuration -> (library, what it computes, reference configuration(s) for the ratio)
OURS = {
    "gradient": {"method": "gradient", "ref": ["zennit.gradient", "captum.saliency"]},
    "lrp.epsilon": {"method": "lrp.epsilon", "ref": ["zennit.epsilon"]},
    "lrp.epsilon_plus_flat": {"method": "lrp.epsilon_plus_flat", "ref": ["zennit.epsilon_plus_flat"]},
    "deep_taylor": {"method": "deep_taylor", "ref": ["zennit.zplus"]},
    "integrated_gradients": {"method": "integrated_gradients", "params": {"steps": STEPS},
                             "ref": ["captum.integrated_gradients"]},
    "smoothgrad": {"method": "smoothgrad", "params": {"augment_by_n": STEPS}, "ref": ["captum.smoothgrad"]},
    "attn_lrp": {"method": "attn_lrp", "ref": ["lxt.attn_lrp"]},
    "grad_cam": {"method": "grad_cam", "ref": ["captum.grad_cam"]},
    "gradient_shap": {"method": "gradient_shap", "params": {"n_samples": 16}, "ref": ["captum.gradient_shap"]},
    "occlusion": {"method": "occlusion", "params": {"sliding_window_shapes": OCCLUSION_WINDOW,
                                                   "strides": OCCLUSION_STRIDE, "chunk_size": 8},
                  "ref": ["captum.occlusion"]},
    "vargrad": {"method": "vargrad", "params": {"augment_by_n": NT_SAMPLES}, "ref": ["captum.vargrad"]},
    "beta_smooth": {"method": "beta_smooth", "ref": ["zennit.beta_smooth"]},
    "shapley_value_sampling": {"method": "shapley_value_sampling", "params": {
        "feature_mask": lambda: blocks(4), "n_samples": SV_ORDERS, "chunk_size": 8},
        "ref": ["captum.shapley_value_sampling"]},
    "shapley_values": {"method": "shapley_values", "params": {"feature_mask": lambda: blocks(2), "chunk_size": 8},
                       "ref": ["captum.shapley_values"]},
    "deep_lift_shap": {"method": "deep_lift_shap", "params": {"baselines": dls_baselines, "chunk_size": 4},
                       "ref": ["captum.deep_lift_shap"]},
    "kernel_shap": {"method": "kernel_shap", "params": {"feature_mask": lambda: blocks(4), "n_samples": KS_SAMPLES,
                                                        "chunk_size": 8}, "ref": ["captum.kernel_shap"]},
    "lime": {"method": "lime", "params": {"feature_mask": lambda: blocks(4), "n_samples": KS_SAMPLES, "chunk_size": 8},
             "ref": ["captum.lime"]},
    "conductance": {"method": "conductance", "params": {"steps": CONDUCTANCE_STEPS}, "keep": [CONDUCTANCE_TENSOR],
                    "ref": ["captum.layer_conductance"]},
    # Concept Relevance Propagation: EpsilonPlusFlat conditioned on one channel of CONDUCTANCE_TENSOR per row, the
    # image repeated CRP_CONCEPTS times (one model, a mask per row) against zennit-crp's CondAttribution
    "crp": {"method": "lrp.epsilon_plus_flat", "condition": [CONDUCTANCE_TENSOR], "ref": ["zennit.crp"]},
    # evaluation metrics of the gradient map (benchmarks/metrics_bench.py), not compiled methods
    "sensitivity_max": {"method": None, "ref": ["captum.sensitivity_max"]},
    "infidelity": {"method": None, "ref": ["captum.infidelity"]},
    "region_perturbation": {"method": None, "ref": []},
    "feature_permutation": {"method": "feature_permutation", "params": {
        "feature_mask": lambda: blocks(4), "chunk_size": PERMUTATIONS_PER_EVAL}, "ref": ["captum.feature_permutation"]},
}
GROUPS = {
    "fast": ["ort.forward", "torch.forward",
             "onnxattr.gradient", "zennit.gradient", "captum.saliency",
             "onnxattr.lrp.epsilon", "zennit.epsilon",
             "onnxattr.lrp.epsilon_plus_flat", "zennit.epsilon_plus_flat",
             "onnxattr.deep_taylor", "zennit.zplus"],
    # "fast" split in two, for a model/batch whose sessions do not all fit in memory at once (VGG16, b8)
    "fast-a": ["ort.forward", "torch.forward",
               "onnxattr.gradient", "zennit.gradient", "captum.saliency",
               "onnxattr.lrp.epsilon", "zennit.epsilon"],
    "fast-b": ["ort.forward", "torch.forward",
               "onnxattr.lrp.epsilon_plus_flat", "zennit.epsilon_plus_flat",
               "onnxattr.deep_taylor", "zennit.zplus"],
    "sampling": ["ort.forward", "onnxattr.integrated_gradients", "captum.integrated_gradients",
                 "onnxattr.smoothgrad", "captum.smoothgrad"],
    # vit_b16: AttnLRP against LXT 2.1's rules on the same torch model (LXT installed with --no-deps)
    "transformer": ["ort.forward", "torch.forward", "onnxattr.gradient", "captum.saliency",
                    "onnxattr.attn_lrp", "lxt.attn_lrp"],
    # Captum's layer and perturbation methods: Grad-CAM at the last feature map (onnxattr's default layer),
    # GradientSHAP with 16 draws, Occlusion over 49 windows of 3 x 32 x 32
    "captum-more": ["ort.forward", "onnxattr.grad_cam", "captum.grad_cam", "onnxattr.gradient_shap",
                    "captum.gradient_shap", "onnxattr.occlusion", "captum.occlusion"],
    # VarGrad over 16 noisy copies against Captum's NoiseTunnel(Saliency, 'vargrad'); Zennit's BetaSmooth
    "noise-tunnel": ["ort.forward", "onnxattr.vargrad", "captum.vargrad", "onnxattr.beta_smooth",
                     "zennit.beta_smooth"],
    # Shapley values of 4 blocks (onnxattr: 15 coalitions; Captum: 24 orders x 4 steps), Shapley value sampling
    # over 16 blocks (2 orders: 32 forward passes each), DeepLIFT SHAP against 4 baselines
    "shapley": ["ort.forward", "onnxattr.shapley_values", "captum.shapley_values", "onnxattr.shapley_value_sampling",
                "captum.shapley_value_sampling", "onnxattr.deep_lift_shap", "captum.deep_lift_shap"],
    # permutation feature importance of 16 blocks (16 forward passes of the batch; needs --batch 2 or more)
    "permutation": ["ort.forward", "onnxattr.feature_permutation", "captum.feature_permutation"],
    # KernelSHAP over 16 blocks: 32 coalitions (forward passes) and the linear fit
    "kernel-shap": ["ort.forward", "onnxattr.kernel_shap", "captum.kernel_shap"],
    # LIME over 16 blocks: 32 coalitions, the similarity weights and the Lasso fit
    "lime": ["ort.forward", "onnxattr.lime", "captum.lime"],
    # conductance over 33 points of the path, at the input and at a ResNet50 block's output in one run, against
    # Captum's LayerConductance at that block (ResNet50 only)
    "conductance": ["ort.forward", "onnxattr.conductance", "captum.layer_conductance"],
    # 8 conditioned maps of one image (CRP) at a ResNet50 block's output, against zennit-crp (ResNet50, batch 1)
    "crp": ["ort.forward", "onnxattr.lrp.epsilon_plus_flat", "zennit.epsilon_plus_flat", "onnxattr.crp", "zennit.crp"],
    # a recurrent net (--models lstm or gru: two bidirectional LSTM or GRU layers): the gradient (the fused backward up
    # to a small batch), LRP-epsilon (unrolled; Arras et al.'s LSTM rules, which no library runs on a torch LSTM) and
    # IG-64 (unrolled) against Captum
    "recurrent": ["ort.forward", "torch.forward", "onnxattr.gradient", "captum.saliency", "onnxattr.lrp.epsilon",
                  "onnxattr.integrated_gradients", "captum.integrated_gradients"],
    # a quantized export (--models resnet50,resnet50-qdq,resnet50-qop: the float model, then onnxruntime's
    # quantize_static in QDQ and QOperator format, int8 weights per channel, uint8 activations): its forward as
    # onnxruntime fuses it into integer kernels, and the maps (no reference library explains a quantized ONNX model)
    "quantized": ["ort.forward", "onnxattr.gradient", "onnxattr.lrp.epsilon", "onnxattr.lrp.epsilon_plus_flat",
                  "onnxattr.deep_taylor"],
    # Captum's metrics of the gradient map (10 draws each) and one 16-step region-perturbation curve
    "metrics": ["ort.forward", "onnxattr.sensitivity_max", "captum.sensitivity_max", "onnxattr.infidelity",
                "captum.infidelity", "onnxattr.region_perturbation"],
}
