// Sparse autoencoders: encode (dense -> activation -> sparse top-k) and decode.
// (filled in by the SAE work)
#pragma once
