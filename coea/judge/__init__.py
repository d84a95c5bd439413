"""LLM-as-a-Judge serendipity evaluation (``coea judge``; docs/judge.md). The prompts live in coea/judge_prompts.py."""
