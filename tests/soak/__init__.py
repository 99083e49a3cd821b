"""The long soak: every fault scenario of ``tests/scenarios.py`` at full size, one command.

    flock /tmp/kairo-heavy.lock python -m tests.soak          # ~15 minutes on 2 cores
    python -m tests.soak --quick                               # every phase, small (~4 min)
    python -m tests.soak --only sigkill_storm --events 200000

Not collected by pytest (no ``test_*.py`` here). See ``__main__.py`` for the phases.
"""
