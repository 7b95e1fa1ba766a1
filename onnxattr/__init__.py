"""onnxattr: compile any ONNX model into one that also returns a relevance map.

    import onnxattr
    explained = onnxattr.compile("model.onnx", "lrp.epsilon")        # an onnx.ModelProto
    analyzer = onnxattr.create_analyzer("gradient", "model.onnx")
    relevance = analyzer.analyze(x, neuron_selection=3)
    photos = onnxattr.read_images("photos/", analyzer.input_shape, preprocess="torch")  # read a slice at a time
    for piece in analyzer.analyze_slices(photos): ...                                   # piece.rows, .relevance
    scores = onnxattr.evaluate("model.onnx", ["lrp.epsilon", "random"], x)  # region perturbation, AOPC
    found = onnxattr.concepts("model.onnx", "lrp.epsilon", "layer_tensor", X)  # a layer's channels over a dataset
"""

from onnxattr.api import Analyzer, compile, create_analyzer, inspect
from onnxattr.compare import compare
from onnxattr.concepts import concepts
from onnxattr.curves import perturbation_curve
from onnxattr.errors import OnnxAttrError, OnnxAttrWarning
from onnxattr.evaluate import evaluate
from onnxattr.image_files import read_images
from onnxattr.methods import REGISTRY as METHODS

__version__ = "0.1.0"
__all__ = ["Analyzer", "compile", "compare", "concepts", "create_analyzer", "evaluate", "inspect", "perturbation_curve",
           "read_images", "OnnxAttrError", "OnnxAttrWarning", "METHODS", "__version__"]
