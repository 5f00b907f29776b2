"""Sweeps: many trainings of one base experiment, on Ray Tune, in MLflow.

One concern per module:

* :mod:`.spec`: the sweep file, validated and expanded into trials;
* :mod:`.teacher_reuse`: offline-teacher features computed once per sweep;
* :mod:`.trial`: what each Tune trial runs (a training plus its cost);
* :mod:`.runner`: the Tuner, the MLflow parent run and its clean-up;
* :mod:`.runs`: reading a sweep's parent and child runs back from MLflow;
* :mod:`.stats`: mean and 95 % interval per setting, baseline differences;
* :mod:`.plot`: the comparison figure.
"""
