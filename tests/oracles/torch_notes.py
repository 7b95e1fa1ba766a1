"""The notes written into every oracle manifest of make_torch.py, and the maps kept that the test does not compare."""

from torch_common import MODES

COMMON_NOTES = [
    "Maps are computed by the libraries in float64 (model.double(), x.double()) on CPU, single-threaded, and "
    "stored as float32; x, target and logits (from the float32 torch model, == onnxruntime's within a few "
    "1e-6) are the float32 originals. Each entry's fp32_rel_dev is max|m32 - m64| / max|m64| for the same "
    "library call run in float32: the rounding floor any float32 implementation should expect.",
    "Modes: max = argmax of the clean logits per sample; index = the stored target; all = every output.",
    "Gradient family seed: 1 at the selected output(s). For mode 'all' Captum has no such mode: the model is "
    "wrapped as SumOutputs (forward returns the sum of the logits, shape [N,1]) and Captum is called with "
    "target=0, which is the VJP with a ones seed; ReLU hooks of guided_backprop/deconvnet still apply to the "
    "wrapped model's nn.ReLU modules.",
    "LRP seed: the selected logit's value (y*onehot; for 'all' the whole logit vector y), passed to zennit as "
    "attr_output. Every method is linear in the seed.",
    "gradient|*|abs is Captum Saliency(abs=True) = |gradient|.",
    "integrated_gradients: Captum riemann_left, baseline 0, 64 steps: (x-0) * mean_k grad(k/64 * x), k=0..63 "
    "(alpha 1 never evaluated). Verified: captum alphas == [k/64], step sizes 1/64. Near alpha=0 MaxPool windows "
    "tie (all activations = biases): compare with a tolerance relative to the map's max.",
    "guided_backprop (Captum): at each nn.ReLU the input gradient (grad_out * [x>0]) is replaced by relu() of it. "
    "deconvnet (Captum): at each nn.ReLU the input gradient is relu(grad_out) (forward mask ignored). "
    "MaxPool/Linear/Conv/Add use plain gradients.",
    "smoothgrad is statistical: Captum NoiseTunnel draws N(0, 1.0) noise per element per copy (torch RNG, "
    "seed 2024), averages the RAW gradients (Saliency abs=False) over 64 noisy copies; in 'max' mode the "
    "target is the clean input's argmax for every copy. Compare only with a statistical tolerance.",
]


METHOD_NOTES = [
    "noise_tunnel maps are statistical: Captum NoiseTunnel (64 copies, N(0, 1.0) noise, torch.manual_seed(2026) "
    "before each call) with nt_type smoothgrad_sq (mean of the squared raw gradients; onnxattr smoothgrad "
    "nt_type=smoothgrad_sq), vargrad (mean of squares minus the squared mean, population variance; onnxattr "
    "vargrad, tag 'abs' over Saliency(abs=True) = postprocess abs), and smoothgrad over InputXGradient (noisy x "
    "times its gradient; base input_t_gradient) and GuidedBackprop (base guided_backprop). Captum sums in the "
    "model's dtype; onnxattr's vargrad sums in float64.",
    "shapley_values / shapley_value_sampling: Captum ShapleyValues(model).attribute(x, baselines=0.5, target, "
    "feature_mask) walks all 6! orders of the six groups of the stored 'mask:coarse' (three bands of rows times two "
    "of columns shared by the channels, [1, 1, H, W]; six bands [1, 1, L]; six runs of features [1, F]); every "
    "feature of a group gets the group's mean gain. ShapleyValueSampling: the mean over n_samples=25 random "
    "orders (torch.manual_seed(2027) before each call), statistical. Captum sums in float32 "
    "(total_attrib is torch.float) even for the float64 model.",
    "deep_lift_shap: Captum DeepLiftShap(model).attribute(x, baselines=x, target): DeepLift (rescale rule, "
    "multiply_by_inputs) against each of the four samples as a baseline, averaged; the model variants as for "
    "deep_lift.",
    "feature_ablation: Captum FeatureAblation(model).attribute(x, baselines=0.5, target, feature_mask, "
    "perturbations_per_eval=4): every feature of a group gets the drop of the selected output when the group "
    "takes 0.5; tag 'default' (mask None: each feature alone) on flat inputs, 'patches' (the stored "
    "'mask:patches': 4 x 4 spatial patches across all channels, [1, 1, *S], or pairs of a flat input's "
    "features, [1, F]) on every net.",
    "feature_permutation: Captum FeaturePermutation(model).attribute(x, target, feature_mask=the stored "
    "'mask:coarse'): every feature of a group gets the drop of the selected output when the group is taken from "
    "the samples of a random permutation of the batch (torch.randperm, redrawn until it moves a row). Tag 'pair': "
    "the first two samples (entry 'rows': 2), where the swap is the only such permutation (deterministic); tag "
    "'default': all four samples (one draw per group after torch.manual_seed(2028), statistical), with the "
    "expectation over the 23 permutations that move a row stored as 'perm_mean:MODE' (computed by "
    "permutation_mean on the torch model).",
    "kernel_shap: Captum KernelShap(model).attribute(x, baselines=0.5, target, feature_mask=the stored "
    "'mask:coarse'): a linear model of the selected output over coalitions of the six groups, fitted by "
    "scikit-learn's LinearRegression with weight 1e6 on the full and the empty coalition and 1 elsewhere; every "
    "feature gets its group's coefficient. Tag 'coalitions': the 40 coalitions stored as 'coalitions:ks' (drawn "
    "with numpy as Captum draws them), given to Captum by replacing its perturb_func (deterministic); tag "
    "'default': Captum's own 25 draws per sample (torch.manual_seed(2029) before), statistical. Captum hands "
    "scikit-learn float32 data even for the float64 model.",
    "lime: Captum Lime(model).attribute(x, baselines=0.5, target, feature_mask=the stored 'mask:coarse'): a linear "
    "model of the selected output over coalitions of the six groups, each weighted by exp(-d^2 / 2) with d the "
    "cosine distance between x and the perturbed input, fitted by scikit-learn's Lasso(alpha=0.01) (tag "
    "'coalitions') or LinearRegression (tag 'linear'); every feature gets its group's coefficient. Both tags "
    "evaluate the 40 coalitions stored as 'coalitions:lime' (each group held with probability 1/2, numpy's draws), "
    "given to Captum by replacing its perturb_func; tag 'default': Captum's own 25 draws per sample "
    "(torch.manual_seed(2031) before), statistical. Captum hands scikit-learn float32 data, and its Lasso stops at "
    "tol=1e-4 (coordinate descent), where onnxattr's FISTA runs to convergence.",
    "beta_smooth: zennit.composites.BetaSmooth(beta_smooth) hooks every nn.ReLU module (each ReLU of these models "
    "is one, and each is an ONNX Relu node) and replaces its gradient by sigmoid(beta * input) * grad_out; "
    "onnxattr's beta_smooth does that at every Relu node. Seeded with 1 at the selected output(s).",
    "grad_cam / guided_grad_cam (models with feature maps): Captum LayerGradCam at the module whose output is the "
    "last feature map of the input's rank with a spatial axis above 1, in the order modules run "
    "(last_feature_map: onnxattr's default layer), relu_attributions=True, resized by "
    "LayerAttribution.interpolate with 'bilinear' ('linear' for Conv1d models), as the Grad-CAM paper does, and "
    "broadcast over the input's channels; GuidedGradCam(model, layer) with the same interpolate_mode (guided "
    "backprop times the resized cam). Seed 1 at the selected output ('all': SumOutputs, target=0).",
    "deep_lift: Captum DeepLift(model).attribute(x, baselines=0.0, target) (rescale rule, multiply_by_inputs=True: "
    "the map is (x - 0) * multiplier; eps=1e-10: where |x - x0| < 1e-10 the plain gradient), seeded with 1 at the "
    "selected output(s) ('all': SumOutputs, target=0). Captum picks a rule by the module's EXACT type "
    "(SUPPORTED_NON_LINEAR): nn.ReLU/ELU/LeakyReLU/Sigmoid/Tanh/Softplus get the rescale rule "
    "g*(f(x)-f(x0))/(x-x0), nn.MaxPool1d/2d/3d its maxpool rule, every other module (Linear, Conv, BatchNorm, "
    "AvgPool, nn.SiLU, ...) and functional op (+, cat, *) the plain gradient. onnxattr's deep_lift: the same rescale "
    "rule (gradient where |x - x0| < 1e-7) at every element-wise nonlinearity node of the ONNX graph, and MaxPool "
    "keeps its gradient route (the winner at x; onnxattr/methods/deep_lift.py, README). Captum's maxpool rule "
    "instead gives, per window, (max(y, y0) - y0) * g at x's winner i plus (y - max(y, y0)) * g at the "
    "reference's winner j, each divided by that input's own delta (x_i - x0_i): the gradient route only where the "
    "reference's winner is x's winner (or the reference window is flat) and y >= y0.",
    "deep_lift tags: 'default' is the model as is. On a model with a MaxPool or an nn.SiLU the same call is also "
    "made on a copy in the form onnxattr sees (deeplift_onnx_form: nn.MaxPool* -> GradientMaxPool*, a subclass "
    "Captum does not look up, so the plain gradient; nn.SiLU -> x * nn.Sigmoid()(x.clone()), the exported "
    "Sigmoid + Mul, whose Sigmoid Captum rescales), tagged 'maxpool_gradient' or "
    "'maxpool_gradient_silu_product'; that copy's maps are stored only where they differ from 'default'. "
    "(x.clone(): Captum hooks a module's input tensor and replaces the whole gradient arriving there, so a "
    "Sigmoid fed x itself would drop the Mul's direct share g*sigmoid(x).)",
    "excitation_backprop: zennit.composites.ExcitationBackprop(stabilizer=lambda z: z + 1e-7*(z == 0), "
    "zero_params=['bias']) with the 'default' LRP canonizers, seeded with 1 at the selected output(s) (ones for "
    "'all'). The composite maps zennit.types.Linear (Conv*, nn.Linear) to ZPlus (x+W+ + x-W-, each share over "
    "their sum) and Sum/AvgPool/AdaptiveAvgPool to Norm; it has no layer_map_base, so ReLU, BatchNorm, MaxPool "
    "and other activations take the plain gradient (at a ReLU that equals passing: z+ relevance at a ReLU output "
    "is x*(...), already 0 where the ReLU gives 0). onnxattr's excitation_backprop (rules/excitation_backprop.toml):"
    " z_plus (x+W+ + x-W-, no bias, as Zennit's ZPlus) on every kernel layer, z rule on pools, proportional "
    "split at residual adds, "
    "element-wise activations pass, seed 1, iNNvestigate's stabilizer z + 1e-7*[z == 0]. Two Zennit defaults "
    "are set to onnxattr's (and the paper's): zero_params=['bias'] (Zennit's default keeps b+ in the "
    "denominator; Zhang et al. 2016 have no bias) and the stabilizer (Zennit's default z + 1e-6*sign(z) moved "
    "the maps by up to 5e-4 of their max on torch_inception/torch_resnet, 3e-5 on torch_mlp/torch_vgg, when "
    "measured). Where every kernel layer's input is >= 0 (ReLU nets on inputs in [0, 1)) the x-W- term "
    "vanishes and both are the paper's x*W+.",
]

MODEL_METHOD_NOTES = {
    "torch_vgg": ["deep_lift: here Captum's maxpool rule gives exactly the gradient route (the GradientMaxPool2d "
                  "copy's maps are bit-identical; checked by the script), so only tag 'default' is stored."],
    "torch_vggbn": ["deep_lift: here Captum's maxpool rule gives exactly the gradient route (the GradientMaxPool2d "
                    "copy's maps are bit-identical; checked by the script), so only tag 'default' is stored.",
                    "excitation_backprop: the BatchNorm2d on the input has nothing to merge into: Zennit gives it "
                    "no rule (plain gradient), and so does onnxattr's preset (norm = gradient)."],
    "torch_inception": ["deep_lift: tag 'default' (Captum's maxpool rule at the MaxPool2d) differs from the "
                        "gradient route; 'maxpool_gradient' is the map to compare.",
                        "excitation_backprop: torch.cat is a plain gradient in both; the AvgPool2d "
                        "(count_include_pad=False) and AdaptiveAvgPool2d get Norm (= onnxattr's z rule on pools)."],
    "torch_resnet": ["excitation_backprop: on the 'default' LRP variant (BatchNorms folded exactly, "
                     "ResNetCanonizer: the residual Sum gets Norm, as onnxattr's proportional add split); the maps "
                     "hold for torch_resnet_bn.onnx too."],
    "torch_conv1d": ["deep_lift: Captum's maxpool rule gives the gradient route here too (swapping only nn.SiLU "
                     "gave the same map as swapping both, when measured); 'default' differs from "
                     "'maxpool_gradient_silu_product' through the SiLU alone."],
}

NOT_COMPARABLE = {
    "torch_inception": {
        f"deep_lift|{mode}|default": "Captum's DeepLift applies its maxpool rule at nn.MaxPool2d (rescaled by the "
        "reference's window maximum, see the notes); onnxattr's deep_lift keeps MaxPool's gradient route on "
        f"purpose (README, onnxattr/methods/deep_lift.py): {pct} of the map's max apart when measured. Compare "
        "'maxpool_gradient'." for mode, pct in (("max", "18%"), ("index", "14%"), ("all", "39%"))} | {
        f"deep_lift_shap|{mode}|default": "Captum's DeepLiftShap is its DeepLift per baseline: the maxpool rule "
        "at nn.MaxPool2d, as for deep_lift|*|default. Compare 'maxpool_gradient'." for mode in MODES},
    "torch_conv1d": {
        **{f"deep_lift|{mode}|default": "nn.SiLU is not in Captum's SUPPORTED_NON_LINEAR, so Captum takes its plain "
           "gradient; the ONNX export spells SiLU as x * Sigmoid(x) and onnxattr rescales the Sigmoid and takes "
           f"the product rule at the Mul: {pct} of the map's max apart when measured. Compare "
           "'maxpool_gradient_silu_product' (Captum on that exported form)."
           for mode, pct in (("max", "0.07%"), ("index", "0.11%"), ("all", "0.10%"))},
        **{f"deep_lift_shap|{mode}|default": "Captum's DeepLiftShap is its DeepLift per baseline: the plain "
           "gradient at nn.SiLU, as for deep_lift|*|default. Compare 'maxpool_gradient_silu_product'."
           for mode in MODES},
        **{f"excitation_backprop|{mode}|default": "Zennit's ExcitationBackprop composite takes the gradient of "
           "Tanh and SiLU (no rule for them) where onnxattr passes relevance through element-wise activations: "
           "~1x the map's max apart (mode max)." for mode in MODES}},
}


FLAT_NOTE = ("Zennit first-layer choice (SpecialFirstLayerMapComposite): the first module in "
             "model.named_modules() order (registration order, depth first) matching the first_map type gets "
             "the special rule; EpsilonPlusFlat/EpsilonAlpha2Beta1Flat match zennit.types.Linear (Conv or "
             "nn.Linear) -> Flat; EpsilonGammaBox matches only Convolution -> ZBox.")
