"""The error catalogue: one test per problem a user can cause, mostly through the command line, one file
per group of exit codes (test_model: 3-6, test_usage: 2, test_data: 7 and 9, test_outputs: 8).

Each checks the exact exit code (onnxattr/errors.py, README "Exit codes") and that stderr is one line
``onnxattr: error: ...`` naming the problem. Items already covered elsewhere are not repeated here:
missing file, junk file, unknown method/parameter with suggestion, a non-positive integer parameter,
``-o`` equal to the input path, a wrong data shape and ``--target 9`` are in tests/test_cli.py;
folders, empty files and external data escaping the model's folder are in tests/test_load.py.
"""
