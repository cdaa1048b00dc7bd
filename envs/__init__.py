"""envs: the action vocabulary, EditPlan, executor and oracle, renderer, reward and the
gymnasium environment. Importing the package registers ``AudioEdit-v0``:

    import gymnasium, envs
    env = gymnasium.make("AudioEdit-v0", songs=[envs.env.Song.load("song.ogg")])
"""

import gymnasium

if "AudioEdit-v0" not in gymnasium.registry:
    # No max_episode_steps: the env truncates itself at a step cap that scales with the
    # song (envs.env.AudioEditEnv, "Episode End").
    gymnasium.register(id="AudioEdit-v0", entry_point="envs.env:AudioEditEnv")
