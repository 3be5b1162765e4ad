#include "sae.hpp"
