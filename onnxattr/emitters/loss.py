"""Classification losses as exporters write them: NegativeLogLikelihoodLoss (torch's nll_loss) and
SoftmaxCrossEntropyLoss (torch's cross_entropy), over input [N, C, d...] and integer targets t [N, d...],
optional class weights w [C], ``reduction`` none / sum / mean and ``ignore_index``.

NLL:  loss_i = -w[t_i] x[i, t_i] (0 where t_i = ignore_index);  none: loss;  sum: sum_i loss_i;
      mean: sum_i loss_i / sum_i c_i, with c_i = w[t_i] [t_i != ignore_index] (w = 1 without weights)
      dx[i, c] = -[c = t_i] c_i G_i,  G_i = g_i (none), g (sum), g / sum_i c_i (mean)
SoftmaxCrossEntropyLoss = NLL(LogSoftmax(x, axis 1)): dx = gl - softmax(x) sum_c gl, gl the NLL's gradient plus
      the one arriving at its optional log_prob output.
The targets and weights get no gradient.
"""

from onnx import TensorProto

from onnxattr.emitters.reduce import log_softmax_grad
from onnxattr.emitters.registry import node_attr, register


LOSS_OPS = ("NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss")


def _nll_input_grad(b, node, x: str, g: str) -> str:
    """dL/dx for NLL over x (the log-probabilities, [N, C, d...], of the node's first input's rank) given the
    loss's cotangent g. The mean divides by the weights of the kept targets, as onnxruntime and torch do (onnx's
    reference evaluator divides by N when ignore_index is -1 and there are no weights)."""
    target = b.op("Cast", [node.input[1]], to=TensorProto.INT64)
    weights = node.input[2] if len(node.input) > 2 and node.input[2] else None
    ignore = node_attr(node, "ignore_index", None)
    reduction = node_attr(node, "reduction", "mean")
    kept = None
    if ignore is not None:
        kept = b.op("Not", [b.op("Equal", [target, b.const(ignore, "int64")])])
        target = b.op("Where", [kept, target, b.const(0, "int64")])  # an ignored index may lie outside 0..C-1
    coef = b.op("Gather", [weights, target], axis=0) if weights is not None else None  # w[t_i], [N, d...]
    if kept is not None:
        mask = b.op("Cast", [kept], to=b.float_type(x))
        coef = mask if coef is None else b.op("Mul", [coef, mask])
    if coef is None:
        coef = b.op("ConstantOfShape", [b.op("Shape", [target])], value=b.fill_value(1.0, x))
    if reduction == "mean":  # over the weights of the kept targets
        g = b.op("Div", [g, b.op("ReduceSum", [coef], keepdims=0)])
    scale = b.op("Mul", [coef, g])  # g: [N, d...] (none), or one number (sum, mean)
    classes = b.op("Slice", [b.op("Shape", [x]), b.ints([1]), b.ints([2])])
    rank = b.rank(node.input[0])
    ids = b.op("Reshape", [b.op("Range", [b.const(0, "int64"), b.op("Squeeze", [classes, b.ints([0])]),
                                          b.const(1, "int64")]), b.ints([1, -1] + [1] * (rank - 2))])
    onehot = b.op("Cast", [b.op("Equal", [b.op("Unsqueeze", [target, b.ints([1])]), ids])], to=b.float_type(x))
    return b.op("Neg", [b.op("Mul", [onehot, b.op("Unsqueeze", [scale, b.ints([1])])])])


@register("NegativeLogLikelihoodLoss")
def nll_loss_vjp(b, node, grads, need):
    out = [None] * len(node.input)
    out[0] = _nll_input_grad(b, node, node.input[0], grads[0])
    return out


@register("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_vjp(b, node, grads, need):
    x = node.input[0]
    log_prob = node.output[1] if len(node.output) > 1 and node.output[1] else b.op("LogSoftmax", [x], axis=1)
    parts = []
    if grads[0] is not None:
        parts.append(_nll_input_grad(b, node, log_prob, grads[0]))
    if len(grads) > 1 and grads[1] is not None:
        parts.append(grads[1])
    out = [None] * len(node.input)
    out[0] = log_softmax_grad(b, log_prob, b.add_all(parts), 1)
    return out
