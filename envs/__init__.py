"""Built-in environments, registered under the ``agentgym/`` namespace.

Entry points are strings, so registering imports nothing heavy; ``agentgym.make`` imports an env when it builds it.
"""

from agentgym.registration import register

register("agentgym/GuessNumber-v0", "agentgym.envs.guess_number:GuessNumberEnv")
register("agentgym/Arithmetic-v0", "agentgym.envs.arithmetic:ArithmeticEnv")
register("agentgym/Werewolf-v0", "agentgym.envs.werewolf.env:WerewolfMessageEnv", max_context_tokens=8192)
register("agentgym/SpiderSQL-v0", "agentgym.envs.spider_sql:SpiderSQLEnv")
