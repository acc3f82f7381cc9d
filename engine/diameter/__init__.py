"""The Diameter Gy front: codec, dictionary, peer connections and the CCR/CCA mapping."""
