"""Failed-node handling across agents: leader election, peer probes, detection, fencing, recovery.

The leader (agent.peers.leader) watches every node and acts on the ones the pure detector
(agent.peers.detector) judges failed; agent.peers.stage is the runtime component wiring it all.
agent.peers.clockskew compares this node's clock with its peers' (run by the peerclock collector).
"""
