"""The OpenAI Agents SDK with `RunConfig(nest_handoff_history=True)`: a triage agent hands off
to a weather agent, which gets the run so far as one message of text (the handoff's call and
its result among it), then calls its tool and answers.

Run in its own virtual environment, with OPENAI_BASE_URL pointing at llmtap.
"""

import json

from agents import Agent, RunConfig, Runner
from agents_sdk_weather import weather_agent

triage = Agent(
    name="Triage",
    instructions="Hand weather questions off.",
    handoffs=[weather_agent],
    model="gpt-4o-mini",
)
result = Runner.run_sync(
    triage, "What is the weather in Oslo?", run_config=RunConfig(nest_handoff_history=True)
)
print(json.dumps({"final": result.final_output, "calls": len(result.raw_responses)}))
