"""Convert small scikit-learn models to ONNX with skl2onnx (models fitted here on synthetic data).

Run from the repository root in a venv with scikit-learn and skl2onnx, e.g.:

    python -m venv /work/venv-skl && /work/venv-skl/bin/pip install skl2onnx scikit-learn
    /work/venv-skl/bin/python tests/thirdparty/make_sklearn.py

Writes to tests/thirdparty/data/:
  skl_mlp_classifier.onnx   MLPClassifier; outputs label (int64) and probabilities through ZipMap (a
                            sequence of maps, ai.onnx.ml) — skl2onnx's default
  skl_mlp_classifier_nozipmap.onnx  the same with zipmap=False (probabilities as a float tensor)
  skl_mlp_regressor.onnx    MLPRegressor (one float output)
  skl_logreg.onnx           LogisticRegression (ai.onnx.ml LinearClassifier + ZipMap)
  skl_tree_ensemble.onnx    RandomForestClassifier (ai.onnx.ml TreeEnsembleClassifier): nothing to
                            differentiate, must be refused with a clear error
"""

import os

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier, MLPRegressor

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FEATURES = 8


def save(model, X, name, **options):
    onx = to_onnx(model, X[:1].astype(np.float32), target_opset={"": 17, "ai.onnx.ml": 3}, **options)
    path = os.path.join(HERE, name)
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())
    print(path, os.path.getsize(path))


def main():
    X, y = make_classification(n_samples=300, n_features=FEATURES, n_informative=5, n_classes=3,
                               random_state=0)
    Xr, yr = make_regression(n_samples=300, n_features=FEATURES, random_state=0)
    X, Xr = X.astype(np.float32), Xr.astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(16, 12), max_iter=300, random_state=0).fit(X, y)
    save(clf, X, "skl_mlp_classifier.onnx")
    save(clf, X, "skl_mlp_classifier_nozipmap.onnx", options={id(clf): {"zipmap": False}})
    reg = MLPRegressor(hidden_layer_sizes=(16,), activation="tanh", max_iter=300, random_state=0).fit(Xr, yr)
    save(reg, Xr, "skl_mlp_regressor.onnx")
    save(LogisticRegression(max_iter=500).fit(X, y), X, "skl_logreg.onnx")
    save(RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(X, y), X,
         "skl_tree_ensemble.onnx")


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    main()
