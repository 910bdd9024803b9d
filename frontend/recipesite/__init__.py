"""The recipe site behind the `recipes` Cloud Function (frontend/main.py).

A package with a distinctive name, not loose sibling modules such as `store.py`: functions-framework
*appends* the source's folder to sys.path, so a generic module name could be shadowed by an installed
package of the same name. `recipesite` is imported the same way whether frontend/main.py is loaded from
the repository root or frontend/ is the deployed root of a Cloud Function.
"""
