"""The policy workbench: a small web application where product managers edit, preview, publish and roll back
grading policies (``flywheel workbench``). Everything it does goes through the library the CLI uses."""
