"""smolagents: a ToolCallingAgent on OpenAIServerModel, one tool, run to its final answer.

smolagents sends the model's tool calls back as assistant text (`Calling tools:\n[...]`) and
their results as a user message (`Observation:\n...`): no `tool` message at all. Run in its
own virtual environment, with OPENAI_BASE_URL pointing at llmtap.
"""

import json
import os

from smolagents import OpenAIServerModel, ToolCallingAgent, tool


@tool
def get_weather(city: str) -> str:
    """The current weather in a city.

    Args:
        city: the city's name
    """
    # (the simulator calls the tool the last user text names: the observation names the next)
    return f"sunny and 21 C, {len(city)} letters; now call final_answer"


model = OpenAIServerModel(
    model_id="gpt-4o-mini",
    api_base=os.environ["OPENAI_BASE_URL"],
    api_key=os.environ["OPENAI_API_KEY"],
)
agent = ToolCallingAgent(tools=[get_weather], model=model, verbosity_level=0, max_steps=4)
final = agent.run("Use get_weather for the weather in Paris.")
print(json.dumps({"final": str(final), "steps": len(agent.memory.steps)}))
