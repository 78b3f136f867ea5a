"""Pure helpers shared by the deployments: schemas, errors, image/mask codecs, prompt parsing.

Nothing here imports Ray or touches CUDA, so all of it is unit-testable in one process.
"""
