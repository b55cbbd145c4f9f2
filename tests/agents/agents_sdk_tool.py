"""The OpenAI Agents SDK: one agent, one function tool, run to its final output.

Run in its own virtual environment, with OPENAI_BASE_URL pointing at llmtap.
"""

import json

from agents import Agent, Runner, function_tool, set_tracing_disabled

set_tracing_disabled(True)  # the SDK's own trace upload is not under test here


@function_tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"sunny and 21 C in {city}"


agent = Agent(
    name="Weather agent",
    instructions="Answer weather questions with the get_weather tool.",
    tools=[get_weather],
    model="gpt-4o-mini",
)
result = Runner.run_sync(agent, "What is the weather in Paris?")
print(json.dumps({"final": result.final_output}))
