"""torch.hub entry points: ``torch.hub.load(repo, NAME, pretrained=True)`` for every registry name.

Each entry point is the registry's builder for that name, taken from the registry so that a new entry
is an entry point without editing this file; its keyword arguments are those of
``qsnn_zoo.create_model`` (``pretrained``, ``weights``, ``cache_dir`` and architecture overrides).
"""
# What `import qsnn_zoo` imports at module level, and huggingface_hub for pretrained downloads
# (torch.hub checks these are importable before it imports this file).
dependencies = ["torch", "safetensors", "huggingface_hub"]

import qsnn_zoo as _qsnn_zoo  # noqa: E402  (torch.hub reads `dependencies` first)

globals().update({_name: _qsnn_zoo.get_entry(_name).builder for _name in _qsnn_zoo.list_models()})
