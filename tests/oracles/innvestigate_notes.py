"""The notes written into every iNNvestigate oracle manifest, and the maps kept that the test does not compare."""

from keras_nets import MODES

NOTES = [
    "Seeds: 'max' and 'index' explain one logit per sample. LRP/DeepTaylor start from the selected logit's "
    "value (head mapping = identity), gradient methods from 1 (head mapping = ones_like). 'all' does not "
    "reduce the output at all: LRP seeds EVERY output neuron with its own logit value (R_out = logits, "
    "negative ones included), gradient methods seed ones for every output (map = gradient of sum of logits), "
    "DeepTaylor seeds relu(logits).",
    "deep_taylor / deep_taylor.bounded append a ReLU to the model output (DeepTaylor._prepare_model): the seed "
    "is relu(selected logit); 'max' selects max(relu(logits)), so a sample whose logits are all <= 0 (or an "
    "'index' target with logit <= 0) gets an all-zero map.",
    "Epsilon rule (EpsilonRule.apply): R_in = x * VJP_W(R_out / (z + eps*s)), s = +1 where z >= 0 else -1 "
    "(sign(0)=+1), no safe_divide; z includes the bias when bias=True. Default epsilon 1e-7 (lrp.epsilon), "
    "0.1 in the sequential presets.",
    "Z rule and every other division use safe_divide(a, b) = a / (b + 1e-7*(b == 0)) (K.epsilon() only where "
    "the denominator is exactly 0); so 0/0 -> 0.",
    "Alpha-beta (AlphaBetaRule): x+ = x*(x>0), x- = x*(x<0), W+/W- likewise. Activator term: "
    "z_a = x+ W+ + x- W- (+bias), R_a = x+ * VJP_{W+}(R/z_a) + x- * VJP_{W-}(R/z_a); inhibitor term: "
    "z_i = x+ W- + x- W+ (+bias), R_i analogous; R_in = alpha*R_a - beta*R_i (inhibitor skipped when beta==0). "
    "BIAS QUIRK with bias=True: the positive copy of the layer gets bias b*(b>0), the negative copy b*(b<0), "
    "and each term adds one positive-weight and one negative-weight copy, so BOTH z_a and z_i contain the FULL "
    "bias b (not b+ in z_a and b- in z_i). _IB variants drop the bias entirely. alpha/beta must satisfy "
    "alpha - beta = 1, alpha >= 1, beta >= 0 (ValueError otherwise).",
    "lrp.z_plus == lrp.alpha_1_beta_0_IB (LRPZPlus subclasses LRPAlpha1Beta0IgnoreBias; handles negative "
    "inputs via the x- W- term). lrp.z_plus_fast (ZPlusFastRule): z = x W+ (no bias, x NOT clipped), "
    "R_in = x * VJP_{W+}(R/z) - assumes x >= 0, differs from z_plus where inputs are negative.",
    "w_square (WSquareRule): R_in = VJP_{W^2}(R / (1 W^2)) - the denominator is the layer without bias applied "
    "to a ones tensor (so for 'same' conv borders only in-image taps count), NOT multiplied by x. "
    "flat (FlatRule) = same with all weights 1 (denominator = number of in-image inputs in the receptive field).",
    "Which rule applies where in LRP (LRP._create_analysis, all presets): the chosen rule only applies to layers "
    "with a kernel (Dense/Conv*), the layer's own activation is ignored (rule on the pre-activation, relevance of "
    "the post-ReLU output used as is). Add and AveragePooling/GlobalAveragePooling ALWAYS use a fixed Z rule "
    "(AddReverseLayer/AveragePoolingReverseLayer: R_in_k = x_k * VJP(R/safe_divide z), no epsilon, no "
    "alpha-beta) whatever rule or preset was chosen. keras Activation layers pass relevance through unchanged; "
    "everything else (MaxPooling, Flatten, Reshape, keras.layers.ReLU layers, Concatenate...) gets the plain "
    "gradient (VJP of R), i.e. MaxPool routes R to the argmax position of each window.",
    "sequential_preset_a: Dense -> Epsilon(eps=0.1, bias), Conv -> Alpha1Beta0 (with bias). sequential_preset_b: "
    "Dense -> Epsilon(eps=0.1, bias), Conv -> Alpha2Beta1 (with bias). Both accept epsilon=... . BN layers "
    "would get AlphaBetaX2m100Rule (none here). On an MLP both presets are plain lrp.epsilon(0.1).",
    "_flat variants: input_layer_rule='Flat' is inserted as the first condition (ichecks.is_input_layer): it "
    "applies to every kernel layer ALL of whose inputs come from an InputLayer, looking through Flatten/Permute/"
    "Reshape layers (so a Dense after Flatten(Input) also counts; with two parallel first layers both count).",
    "until_layer_idx (real kwarg name of lrp.sequential_preset_b_flat_until_idx: until_layer_idx, default None; "
    "rule FlatRule): Flat is applied to layers model.layers[0..until_layer_idx] INCLUSIVE, compared by identity. "
    "model.layers of a functional model includes the InputLayer at index 0 and weightless layers (MaxPool, "
    "Flatten, Add...) count too (the docstring claiming weightless layers are skipped is wrong); only kernel "
    "layers are affected. So until_layer_idx=1 == preset_b_flat (layer 1 is the first Conv/Dense). keras_cnn "
    "layers: [x, conv1, pool1, conv2, flatten, dense1, logits] -> idx2 == idx1, idx3 adds conv2. keras_mlp: "
    "[x, dense1, dense2, logits] -> idx2 also makes dense2 Flat. keras_resnet: [x, conv1, block_conv1, "
    "block_conv2, block_add, ...] -> idx2 adds block_conv1, idx3 adds block_conv2. Priority: input-layer rule, "
    "then until-idx rule, then the preset's Dense/Conv rules.",
    "deep_taylor (DeepTaylor._create_analysis): a kernel layer 'with activation' gets Alpha1Beta0IgnoreBias "
    "(= z+), one 'without activation' WSquare - but ichecks.contains_activation(layer) is hasattr(layer, "
    "'activation'), true for EVERY Dense/Conv (linear ones included), so in practice every kernel layer "
    "(the final linear Dense too) uses z+ (alpha1beta0, no bias); WSquare is never used. Activation(relu), "
    "ReLU, MaxPool, AveragePool, Add, Flatten/Reshape/Concatenate: plain gradient (Add copies R into BOTH "
    "operands -> not conservative on residual nets; AvgPool spreads R/k^2 evenly, not in proportion to x). "
    "Any other layer type raises NotImplementedError.",
    "deep_taylor.bounded(low, high): like deep_taylor, plus BoundedRule (Z_B) with priority 10 on kernel layers "
    "that satisfy is_input_layer (same lookup as _flat). Z_B: z = x W - low W+ - high W- (no bias), "
    "R_in = x*VJP_W(R/z) - low*VJP_{W+}(R/z) - high*VJP_{W-}(R/z) with safe_divide. low/high are required "
    "(ValueError if None). LRP's input_layer_rule=(low, high) builds the same rule.",
    "SEED QUIRK: only Gradient (and so input_t_gradient, integrated_gradients, smoothgrad) overrides "
    "_head_mapping with ones_like. deconvnet and guided_backprop inherit ReverseAnalyzerBase's identity head "
    "mapping, so they are seeded with the selected LOGIT VALUE ('all': with the logits vector), i.e. their maps "
    "are the one-hot-seeded maps times the logit (checked numerically on keras_mlp).",
    "Gradient (ReverseAnalyzerBase): postprocess 'abs'/'square' applied to the final input gradient. "
    "input_t_gradient = x * gradient. deconvnet: at every layer containing a ReLU (Dense/Conv with relu, "
    "Activation('relu'), ReLU) R <- relu(R), then the VJP of the layer WITHOUT its relu (no forward mask). "
    "guided_backprop: R <- relu(R), then the VJP of the full layer (forward relu mask applied). Layers "
    "without relu (final linear Dense, pools, Add) use the plain gradient.",
    "integrated_gradients: PathIntegrator; samples ref + (k/steps)*(x - ref) for k = 0..steps-1 (left Riemann "
    "sum, alpha=1 never evaluated), mean of the gradients times (x - ref); steps=64, reference_inputs=0. "
    "'max' mode picks argmax of the UNPERTURBED model output and uses it as index for all steps. "
    "neuron_selection must be passed by keyword.",
    "smoothgrad: GaussianSmoother with AddGaussianNoise(stddev=1.0): noise_scale is stored but ignored "
    "(std is always 1.0, whatever the input range); mean over augment_by_n=64 noisy gradients; 'max' uses "
    "argmax of the unperturbed output; postprocess (if any) applies per sample before the mean. Random: "
    "compare statistics only.",
    "lrp.z_IB / lrp.epsilon_IB are not registered in 2.1.2 (KeyError). Rebuilt here: lrp.z_IB = "
    "innvestigate.analyzer.LRP(model, rule=<ZRule subclass with bias=False>) (bn_layer_rule None); "
    "lrp.epsilon_IB = innvestigate.analyzer.LRPEpsilon(model, epsilon=1e-7, bias=False). Add/AvgPool still "
    "get the fixed Z rule.",
    "MaxNeuronSelection (max mode) = reduce_max over the output; its gradient routes the seed to the argmax "
    "(TF splits it equally between exact ties). 'index' uses tf.gather_nd with (batch_pos, target) pairs.",
    "keras_cnn_op9.onnx is the same Keras model as keras_cnn exported at opset 9: its maps are the keras_cnn "
    "entries (no separate npz).",
]


MODEL_NOTES = {
    "keras_strided": [
        "keras_strided: inputs in [-1, 1]. ZeroPadding2D((1,0),(2,1)) -> Pad; Conv2D stride 2 'same' on an even "
        "size (TF pads 0 before, 1 after: asymmetric ONNX pads); Conv2D stride 2 'valid'; LeakyReLU(0.2) and "
        "Activation('relu') as layers of their own; GlobalAveragePooling2D (LRP: fixed Z rule); Dropout.",
    ],
    "keras_conv1d": [
        "keras_conv1d: the Keras model ends in Dense(activation='softmax'); the ONNX export outputs the softmax "
        "probabilities; iNNvestigate analyzes innvestigate.model_wo_softmax(model) (as its docs require), so "
        "'logits' here are the pre-softmax values and every map explains them. Conv1D 'same' + relu, "
        "MaxPooling1D, Conv1D stride 2 'valid' + tanh, Dropout, Dense + sigmoid.",
    ],
    "keras_branch": [
        "keras_branch: Concatenate of a Conv 1x1 + relu branch and a Conv 3x3 followed by a keras.layers.ReLU "
        "LAYER (not Activation: iNNvestigate's LRP gives that layer the plain gradient, and deconvnet/"
        "guided_backprop's contains_activation(layer, 'relu') is False for it, so they apply no relu(R) there); "
        "MaxPooling2D(3, strides 2, 'same'); GlobalMaxPooling2D (gradient: routes R to the max).",
    ],
    "keras_sepconv": [
        "keras_sepconv: inputs in [-0.5, 2]. DepthwiseConv2D(depth_multiplier 2) and SeparableConv2D; "
        "iNNvestigate treats a SeparableConv2D as ONE kernel layer (its rules modify depthwise and pointwise "
        "kernels separately, e.g. W+ = (dw+, pw+)); tf2onnx writes it as two Convs (grouped, then 1x1).",
    ],
    "keras_se": [
        "keras_se: a squeeze-excitation block, Conv2D + relu, then GlobalAveragePooling2D, Dense + relu, Dense + "
        "sigmoid, Reshape, and Multiply([gate, map]) (torchvision's order; keras_se_xfirst.onnx is the same model "
        "with Multiply([map, gate]), as Keras' EfficientNet writes it). iNNvestigate has no rule for Multiply and "
        "takes its gradient, whichever operand is first; onnxattr's presets give a Mul of two activations its "
        "gradient too. Analyzers that accept only ReLU activations (deep_taylor) refuse the sigmoid (errors).",
    ],
    "keras_bn": [
        "keras_bn: Conv2D -> BatchNormalization -> Activation('relu') twice (BN statistics from 8 epochs of "
        "training); tf2onnx folds each BN into its Conv. Only the gradient family is recorded: every LRP preset "
        "with a bn_layer_rule (z, epsilon, w_square, flat, alpha_beta, z_plus_fast, sequential presets; "
        "DeepTaylor with WSquare) goes through igraph.apply_mapping_to_fused_bn_layer, whose scale layer "
        "uses gamma/sqrt(var**2+eps) and beta - mean/sqrt(var**2+eps) (the quirk we do not copy; "
        "only LRP(rule=...) without bn_layer_rule uses BatchNormalizationReverseLayer, a Z rule on the BN: "
        "R_in = x (y - beta) R / ((x - mean) y)). integrated_gradients and smoothgrad raise on BN models "
        "under TF 2.14 (recorded in errors).",
    ],
}


# entries our ONNX-level method cannot reproduce, with the reason (test_oracles.py skips them, citing it)
NOT_COMPARABLE = {
    "keras_sepconv": {
        k: "SeparableConv2D is one Keras layer (iNNvestigate applies the rule to depthwise+pointwise at once, "
           "e.g. z+ with (dw+, pw+)) but two ONNX Convs with no activation between them; rules that do not "
           "compose (z+, and numerically z on the unbounded depthwise output) differ"
        for k in [f"{m}|{mode}|default" for m in ("deep_taylor", "deep_taylor.bounded", "lrp.z_IB")
                  for mode in MODES]},
    "keras_branch": {
        f"integrated_gradients|{mode}|default": "at the zero baseline (k=0) every position of the "
        "GlobalMaxPooling2D ties; TF's reduce_max gradient shares the seed among ties, our GlobalMaxPool VJP "
        "gives it to the first maximum (as torch's adaptive max pool does): the maps differ by x*g_tie(0)/64, "
        "~3% of the max" for mode in MODES},
}

# every model: iNNvestigate seeds deconvnet/guided_backprop with the selected logit (comparable after dividing
# by it, see tests/methods/test_oracles.py), in mode "all" with each output's own logit
LOGIT_SEEDED_ALL = {
    f"{m}|all|default": "iNNvestigate seeds deconvnet/guided_backprop with the logit values (ReverseAnalyzerBase's "
    "identity head mapping): in mode 'all' each output is seeded with its own logit, which no rescaling of a "
    "ones-seeded map (ours, Captum's) reproduces; relu(R) at every ReLU also makes these maps only positively "
    "homogeneous in the seed" for m in ("deconvnet", "guided_backprop")}


def not_comparable(name):
    return {**NOT_COMPARABLE.get(name, {}), **LOGIT_SEEDED_ALL}
