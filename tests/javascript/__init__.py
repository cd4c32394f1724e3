# A package, so that its conftest is `javascript.conftest`: a second top-level `conftest` module would replace
# tests/conftest.py in sys.modules, and the suite's `from conftest import ...` would then find this one.
