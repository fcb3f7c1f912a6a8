"""What the networks fix about shapes, without torch: file headers are checked against it by
code that loads no network (`imgcomp info`)."""

# The autoencoder's encoder halves the image's height and width three times: a latent
# position covers SUBSAMPLING x SUBSAMPLING pixels.
SUBSAMPLING = 8
