import importlib.util

# torchao is an optional extra (the test extra installs it); without it the quantization tests are not collected.
collect_ignore_glob = [] if importlib.util.find_spec("torchao") else ["test_*.py"]
