"""``mtl-report SWEEP_DIR`` (``mtl.report.cli``): one table of every run under a directory, grouped by config choice.

Collects each run's ``results.json`` (a run is a directory with ``.hydra/``; one without results
is listed as failed, never dropped), groups the runs by their config-group choices (``--group``,
default ``method``; e.g. ``--group method sam``), and reports per group the mean ± standard
deviation over the runs (seeds) of every test metric, Δm% against the baselines, and the rank.
Writes ``report.md``, ``report.csv``, for two or more tasks ``pareto.png`` and ``pareto.pdf``
(per-task trade-off with the Pareto front highlighted), and, from the runs' CSV logs,
``curves.png`` and ``curves.pdf`` (training and validation curves per group, mean over seeds)
into ``--out``. ``--versus sam=none`` adds each group's differences from the group that ran with
``sam=none`` instead, paired by seed. ``--stage last_epochs`` compares the mean of each run's last
epochs' validation metrics (``callbacks=last_epochs_mean``, the NYUv2/CityScapes protocol)
instead of its checkpoint's test metrics.

The Δm% baselines ``{task: {metric: value}}`` come from the first of:

1. ``--baselines FILE``, a JSON file;
2. the single-task runs under the sweep dir (``method=stl method.task=<name>``): each contributes
   its own task's test metrics, averaged over seeds. They are listed as baselines, not ranked as
   methods;
3. the ``baselines`` key of the runs' config (e.g. published numbers in an ``experiment=`` config),
   in the same format.

The package: ``runs`` (find and group the runs of a sweep), ``baselines`` (where Δm%'s baselines
come from), ``tables`` (the summary and paired tables, Markdown and CSV), ``plots`` (the Pareto
front and the curves), ``cli`` (``report`` and the command line).
"""
