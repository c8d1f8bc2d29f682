"""Remote targets: machines deploybench reaches over a transport (SSH today) to measure there.

``targets``   what a target is and where it is defined (``ssh://`` URLs, ``[tool.deploybench.targets]``,
              a targets file)
``transport`` the small interface every transport implements (run, start with pipes, put, get, close)
``ssh``       that interface over asyncssh, with the user's own ssh config, agent and known_hosts
``probe``     what a target has (Python, runtimes, CPU, memory), learnt by a script run in its own Python
``command``   ``deploybench targets``

This room sits below ``pipeline`` (it imports nothing from it), so a worker can later be launched on a
device through a transport exactly as ``pipeline.worker`` launches one here.
"""
