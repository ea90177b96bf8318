"""The protocol on a run directory, as small pieces that each read alone:

    layout.py    every path of a run directory, the DONE settings records, the lock
    settings.py  config + seed -> the settings each stage's output is keyed by (pure)
    context.py   one handle on a run: config, layout, prepared data, device, messages, timing
    stages.py    Job and plan (the declared sweep), one small class per stage behind one interface
    sweep.py     the loop that `doge run`, its stage commands, `doge jobs` and Ray drive
"""
