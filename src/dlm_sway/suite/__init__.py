"""Suite layer: the spec model and loader, the runner, and the composite score.

It sits above ``report`` and ``probes``: a suite is run into a
:class:`~dlm_sway.core.result.SuiteResult`, scored by :mod:`dlm_sway.suite.score`,
and handed to the renderers in :mod:`dlm_sway.report`.
"""
