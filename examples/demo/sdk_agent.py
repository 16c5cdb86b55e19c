"""Unmodified OpenAI SDK code: it reads OPENAI_BASE_URL and OPENAI_API_KEY from its environment,
which the sandbox points at its own loopback endpoint and a per-run token. Every call goes through
the gateway: the ModelPolicy picks the model, budgets apply, the answer is journaled."""

from openai import OpenAI


def main(input):
    client = OpenAI()
    question = f"One line of packing advice for {input['city']}, please."
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
    )
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}], stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    return {"answer": answer.choices[0].message.content, "streamed": streamed}
