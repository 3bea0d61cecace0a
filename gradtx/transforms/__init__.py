"""The building blocks, one module per family. The public names live in ``gradtx``."""
