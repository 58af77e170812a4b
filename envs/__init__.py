"""Built-in environments, registered under the ``agentgym/`` namespace.

Entry points are strings, so registering imports nothing heavy; ``agentgym.make`` imports an env when it builds it.
"""

from agentgym.registration import register

register("agentgym/GuessNumber-v0", "agentgym.envs.guess_number:GuessNumberEnv")
register("agentgym/Arithmetic-v0", "agentgym.envs.arithmetic:ArithmeticEnv")
# The main job's task: a + b with a, b in 1..20, one reply, its last number the answer. SmolLM2-135M-Instruct starts
# weak at it (it often writes a wrong sum or no number within the reply) and GRPO lifts it within minutes on a CPU.
register("agentgym/Addition-v0", "agentgym.envs.arithmetic:ArithmeticEnv", num_operands=2, max_operand=20, ops="+",
         allow_tool=False, max_turns=1, answer_format="last_number")
register("agentgym/Werewolf-v0", "agentgym.envs.werewolf.env:WerewolfMessageEnv", max_context_tokens=8192)
register("agentgym/SpiderSQL-v0", "agentgym.envs.spider_sql:SpiderSQLEnv")
