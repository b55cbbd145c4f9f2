"""The OpenAI Agents SDK: one agent, one function tool, run to its final output.

Run in its own virtual environment, with OPENAI_BASE_URL pointing at llmtap.
"""

import json

from agents import Runner
from agents_sdk_weather import weather_agent

result = Runner.run_sync(weather_agent, "What is the weather in Paris?")
print(json.dumps({"final": result.final_output}))
