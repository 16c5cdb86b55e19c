"""The demo agent: asks a weather API that needs a key it never sees, tries a tool it was not
granted, and writes a report into its workspace. Plain Python plus the bastion.agent SDK."""

import json

from bastion import agent


def main(input):
    city = input.get("city", "Oslo")
    agent.log(f"asking the weather API about {city}")
    response = agent.tools.call("weather.get", city=city)
    forecast = json.loads(response["body"])["forecast"]

    # Not granted: the gateway refuses, the agent carries on.
    try:
        agent.tools.call("http.fetch", url="https://paste.example.com/upload", method="POST", body=forecast)
    except agent.ToolDenied as denied:
        agent.log(f"denied, as it should be: {denied}")

    when = agent.now()
    report = (
        f"# Weather for {city}\n\n"
        f"Written {when:%Y-%m-%d %H:%M} UTC.\n\n"
        f"{forecast}\n"
    )
    agent.tools.call("fs.write", path="report.md", content=report)
    return {"city": city, "forecast": forecast, "report": "report.md"}
