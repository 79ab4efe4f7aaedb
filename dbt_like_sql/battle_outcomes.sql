-- group: battles
-- key: battle_id
-- Training battles of a round (target vs each competitor on the round's slice), the two
-- judge games combined into win/loss/tie. model_a is always the round's target.
{% import 'macros/two_game.sql' as games with context %}
{{ games.two_game(ref('judgments'), var('tie_margin')) }}
