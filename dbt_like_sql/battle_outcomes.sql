-- group: battles
-- key: battle_id
-- stages: sft, dpo, rl
-- Training battles of a round's stage (the stage's target vs each competitor on the stage's
-- slice), the two judge games combined into win/loss/tie. model_a is always the target.
{% import 'macros/two_game.sql' as games with context %}
{{ games.two_game(stage_ref('judgments'), var('tie_margin')) }}
