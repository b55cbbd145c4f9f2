"""The Agents SDK's weather agent that the Agents SDK scripts here run (one function tool),
with the SDK's own trace upload off: it is not under test."""

from agents import Agent, function_tool, set_tracing_disabled

set_tracing_disabled(True)


@function_tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"sunny and 21 C in {city}"


weather_agent = Agent(
    name="Weather agent",
    instructions="Answer weather questions with the get_weather tool.",
    tools=[get_weather],
    model="gpt-4o-mini",
)
