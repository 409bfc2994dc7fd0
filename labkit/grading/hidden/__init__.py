"""The hidden tests, one module per notebook (nb00.py for 00_start_here, ...).

Importing a module registers its questions (:mod:`labkit.grading.authoring`).
"""
