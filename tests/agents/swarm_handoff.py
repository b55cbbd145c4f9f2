"""OpenAI Swarm's two-agent handoff example, unchanged but for printing what it saw.

Run in its own virtual environment (the agent frameworks pin their own openai versions),
with OPENAI_BASE_URL pointing at llmtap.
"""

import json

from swarm import Agent, Swarm

client = Swarm()


def transfer_to_agent_b():
    return agent_b


agent_a = Agent(
    name="Agent A",
    instructions="You are a helpful agent.",
    functions=[transfer_to_agent_b],
)

agent_b = Agent(
    name="Agent B",
    instructions="Only speak in Haikus.",
)

response = client.run(
    agent=agent_a,
    messages=[{"role": "user", "content": "I want to talk to agent B."}],
)
print(json.dumps({"agent": response.agent.name, "last": response.messages[-1]["content"]}))
