"""Node problem detection, node-problem-detector (NPD) compatible.

Kernel, journal and file log lines and custom plugin checks become NodeConditions (permanent
problems), Events (temporary ones) and metrics. One module per responsibility:

- ``model``: the parsed problem definitions (pure data);
- ``pattern``: NPD's Go RE2 patterns translated to Python ``re``, and its buffer match rule;
- ``npdconfig`` / ``yamlconfig`` / ``loader``: NPD's monitor JSON and nodemedic's YAML format;
- ``kmsg`` / ``filesource`` / ``journal``: log sources feeding bounded ``linequeue`` queues;
- ``matcher``: a monitor's rules applied to lines (pure, runs in a worker thread);
- ``conditions``: the condition state machine (pure: transitions, clear-after, restore);
- ``workload``: OOM kills and hung tasks attributed to the pod owning the cgroup;
- ``checks``: custom plugin checks run safely;
- ``detector``: wires sources, matchers, state and the Kubernetes publisher together.

The collector ``agent.collectors.problems`` exports the metrics; ``agent.kube.conditions`` is
the only writer of node conditions.
"""
